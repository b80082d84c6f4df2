"""An AWS IoT Greengrass v2 component for the edge container: the recipe generator (`recipe.py`, CLI in
`__main__.py`), the device-side launcher it runs (`launch_edge.py`, an S3 artifact of the component), and
the recipe JSON Schema the tests validate against.

`recipe_schema.json` is byte-for-byte `gdk/static/recipe_schema.json` of aws-greengrass/aws-greengrass-gdk-cli
at commit a662a92947558b78365de59af9af0358dcb6d041 (2024-01-16), Apache-2.0: the schema the GDK CLI
validates recipes against in `gdk component build` (the CLI is not on PyPI)."""
