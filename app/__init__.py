"""The m3lab explorer: a Gradio app over :mod:`m3lab` (``m3lab demo`` or ``python -m app``).

``app.callbacks`` holds the logic of each view as plain, testable functions; ``app.ui`` the
layout and wiring; ``app.state`` the served model, corpus and cached index; ``app.corpora``
the data sets and upload limits; ``app.main`` the command line.
"""
