"""Shared fixtures: the web adapter's (an app with console login and API token, logged-in clients), the
canary's scripted /readyz and webhook receiver, and the blog app with the Procfile's worker."""

from tests.app_e2e.conftest import blog, blog_env, procfile_worker, service_env  # noqa: F401
from tests.canary.fixtures import readyz, webhook  # noqa: F401
from tests.web.conftest import api_headers, app, client, console, make_app, web_env  # noqa: F401
