from django.db import migrations


def create_clock(apps, schema_editor):
    apps.get_model("stigmem", "NodeClock").objects.get_or_create(pk=1)


class Migration(migrations.Migration):
    """The NodeClock row every write locks; it must exist before the first write."""

    dependencies = [("stigmem", "0001_initial")]

    operations = [migrations.RunPython(create_clock, migrations.RunPython.noop)]
