"""The pickup portal: sealed messages, one-time codes, and the web app.

``service.PortalService`` seals messages and runs the lifecycle;
``app.create_app`` serves the recipient-facing pages. The server never holds
a message key: it travels in the link's fragment and the browser decrypts.
"""
