"""decision: each user's notification URLs (apprise), sealed at rest

Revision ID: 0007_notification_urls
Revises: 0006_signal_quality
"""

from alembic import op
import sqlalchemy as sa
import shared.db.types


revision = "0007_notification_urls"
down_revision = "0006_signal_quality"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification_urls",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("scheme", sa.String(length=32), nullable=False),
        sa.Column("url_sealed", sa.Text(), nullable=False),
        sa.Column("created_at", shared.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_notification_urls_user_id"), "notification_urls", ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_notification_urls_user_id"), table_name="notification_urls")
    op.drop_table("notification_urls")
