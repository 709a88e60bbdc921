from django.contrib import admin

from menu.models import Drink


@admin.register(Drink)
class DrinkAdmin(admin.ModelAdmin):
    list_display = ["name", "price_cents"]
    prepopulated_fields = {"slug": ["name"]}
