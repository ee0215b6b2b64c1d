"""One module per scenario; each has ``run(settings) -> dict`` and writes its JSON and plot."""
