"""The web server: the HTTP API, the HTML pages and the Gradio chat as one ASGI app (see ``app``)."""
