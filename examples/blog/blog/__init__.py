"""A small blog: the protected app of the end-to-end tests (see tests/app_e2e).

Configured by the environment as it would be in production: DATABASE_URL (postgresql://, driver
psycopg2) and DATA_BASE_DIR (users.json, uploads/).
"""

import os

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()


def create_app():
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
    # The rollback service swaps or rewrites the database under the running app: a pooled connection
    # may be dead by the next request, so check it out with a ping.
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True}
    app.config["DATA_BASE_DIR"] = os.environ.get("DATA_BASE_DIR", "/var/data")

    db.init_app(app)
    Migrate(app, db)

    from rollback.flask import init_app
    init_app(app)

    from . import views
    app.register_blueprint(views.bp)
    return app
