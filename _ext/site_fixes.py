"""Two fixes to the HTML the themes write, found by ``tools/site_check.py``.

* An inline script added with ``app.add_js_file(None, body=...)`` (sphinx-thebe's
  configuration, sphinx-togglebutton's selector) reaches a page twice, once named
  ``None`` and once ``""``, and the browser stops at the second copy ("Identifier
  'THEBE_JS_URL' has already been declared"). Each page keeps one copy of every script.
* pydata-sphinx-theme reads the colour mode from ``html_context["default_mode"]``;
  without one, every first visit logs "Got invalid theme mode". The book's figures
  and tables are drawn on white: light is the default (the switch in the header still
  offers dark and auto).
"""

from __future__ import annotations


def _one_of_each_script(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for script in context.get("script_files", []):
        # An inline script is registered once with file name None and once with "":
        # the same script to the browser.
        attributes = tuple(sorted(getattr(script, "attributes", {}).items()))
        key = (getattr(script, "filename", script) or "", attributes)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def _default_mode(app, config):
    config.html_context = {**(config.html_context or {})}
    config.html_context.setdefault("default_mode", "light")


def setup(app):
    app.connect("config-inited", _default_mode)
    app.connect("html-page-context", _one_of_each_script)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
