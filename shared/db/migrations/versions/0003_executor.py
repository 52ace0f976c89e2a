"""executor: positions.close_event_sent, bot_blocks (kill switch block that survives a restart)

Revision ID: 0003_executor
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa
import shared.db.types


revision = "0003_executor"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("positions", schema=None) as batch_op:
        # Rows from before this revision were published by the code of that time: count them as sent.
        batch_op.add_column(sa.Column("close_event_sent", sa.Boolean(), nullable=False, server_default=sa.true()))
    op.create_table(
        "bot_blocks",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("bot_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("blocked_at", shared.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "bot_id"),
    )


def downgrade() -> None:
    op.drop_table("bot_blocks")
    with op.batch_alter_table("positions", schema=None) as batch_op:
        batch_op.drop_column("close_event_sent")
