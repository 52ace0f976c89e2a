"""decision: a partial index on the decisions still `sent`, for the re-send of unanswered intents

Revision ID: 0008_decisions_sent_index
Revises: 0007_notification_urls
"""

from alembic import op
import sqlalchemy as sa


revision = "0008_decisions_sent_index"
down_revision = "0007_notification_urls"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_decisions_sent", "decisions", ["expires_at"],
        sqlite_where=sa.text("order_status = 'sent'"), postgresql_where=sa.text("order_status = 'sent'"),
    )


def downgrade() -> None:
    op.drop_index("ix_decisions_sent", table_name="decisions")
