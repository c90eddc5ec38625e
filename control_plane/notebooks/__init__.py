"""Managed notebooks: JupyterLab servers as supervised children, reached through the control
plane's proxy, and the export of a notebook into training code."""
