"""The web dashboard: server-rendered pages over the same services as the REST API.

Layout: ``pages/<area>.py`` holds one ``APIRouter`` of pages for an area (reads through that
area's services), ``templates/<area>_<page>.html`` one template per page, ``static/`` the
stylesheet and the one script. Writes go from the browser to the REST API itself (``api-form``
in ``static/dashboard.js``, with the session cookie and its CSRF token), so a page never has a
second path to the data. Adding a page: a function in ``pages/``, a template, a test.
"""
