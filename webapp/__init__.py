"""The web app's parts that are not its layout: what guards the server from the requests it gets."""
