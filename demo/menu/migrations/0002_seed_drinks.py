"""Put a few drinks on the menu, so the demo has something to show after `migrate`."""

from django.db import migrations

DRINKS = [
    ("Espresso", "espresso", 250, "A short, strong shot."),
    ("Cappuccino", "cappuccino", 380, "Espresso, steamed milk and a thick foam."),
    ("Flat white", "flat-white", 400, "A double ristretto with velvety milk."),
    ("Filter coffee", "filter-coffee", 300, "Today's single origin, brewed by the cup."),
]


def seed(apps, schema_editor):  # type: ignore[no-untyped-def]
    Drink = apps.get_model("menu", "Drink")
    for name, slug, price_cents, description in DRINKS:
        Drink.objects.get_or_create(slug=slug, defaults={"name": name, "price_cents": price_cents,
                                                         "description": description})


def unseed(apps, schema_editor):  # type: ignore[no-untyped-def]
    apps.get_model("menu", "Drink").objects.filter(slug__in=[d[1] for d in DRINKS]).delete()


class Migration(migrations.Migration):
    dependencies = [("menu", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
