from pathlib import Path

from flask import Blueprint, abort, current_app, render_template, send_from_directory

from . import db
from .models import Post, User

bp = Blueprint("blog", __name__)


@bp.route("/")
def index():
    posts = db.session.scalars(db.select(Post).order_by(Post.id)).all()
    return render_template("index.html", posts=posts)


@bp.route("/users/<int:user_id>")
def user(user_id):
    found = db.session.get(User, user_id) or abort(404)
    return render_template("user.html", user=found)


@bp.route("/uploads/<path:name>")
def upload(name):
    return send_from_directory(Path(current_app.config["DATA_BASE_DIR"]) / "uploads", name)
