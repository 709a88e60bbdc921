from django.db import models


class Drink(models.Model):
    """One drink on the coffeehouse menu (edit them in the admin)."""

    name = models.CharField(max_length=100)
    slug = models.SlugField(unique=True)
    price_cents = models.PositiveIntegerField()
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def price(self) -> str:
        return f"{self.price_cents // 100}.{self.price_cents % 100:02d}"
