"""Test support for the Gradio app: launch app.py on a free local port and stop it again."""
