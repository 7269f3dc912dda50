"""add user bio

Revision ID: 9a7f3b5c2e14
Revises: 4c1d9e2a7b01
Create Date: 2026-02-03 14:05:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '9a7f3b5c2e14'
down_revision = '4c1d9e2a7b01'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('bio', sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('bio')
