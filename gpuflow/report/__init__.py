"""The report model (what a summary says), JUnit parsing and rendering to
Markdown and HTML."""
