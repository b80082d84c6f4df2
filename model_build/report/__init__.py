"""The report room: a build's metrics as report.md and its plots. `view` arranges metrics.json into the
report's sections, `sections` renders each (values formatted by `formatting`), `markdown` writes the file with
links to the PNGs `plots` draws (matplotlib, imported when it draws). It measures nothing itself."""
