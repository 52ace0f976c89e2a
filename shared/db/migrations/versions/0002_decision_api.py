"""decision API: bot risk fields (spread limit, trading hours, correlation check), soft delete; account leverage and
the kill switch's day-start balance

Revision ID: 0002_decision_api
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa
import shared.db.types


revision = "0002_decision_api"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bots", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_spread_pips", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("trading_hours", sa.String(length=16), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("correlation_check", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.add_column(sa.Column("kill_switch_reset_at", shared.db.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("deleted_at", shared.db.types.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table("broker_accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("leverage", sa.Float(), nullable=False, server_default="100"))
        batch_op.add_column(sa.Column("day_start_balance", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("day_start_at", shared.db.types.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("broker_accounts", schema=None) as batch_op:
        batch_op.drop_column("day_start_at")
        batch_op.drop_column("day_start_balance")
        batch_op.drop_column("leverage")
    with op.batch_alter_table("bots", schema=None) as batch_op:
        batch_op.drop_column("deleted_at")
        batch_op.drop_column("kill_switch_reset_at")
        batch_op.drop_column("correlation_check")
        batch_op.drop_column("trading_hours")
        batch_op.drop_column("max_spread_pips")
