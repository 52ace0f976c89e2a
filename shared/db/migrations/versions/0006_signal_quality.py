"""signal quality: the bots' cost-aware gates, the signals' calibrated p_win and expected_r_net, the orders' early exit

Revision ID: 0006_signal_quality
Revises: 0005_decision_outbox
"""

from alembic import op
import sqlalchemy as sa


revision = "0006_signal_quality"
down_revision = "0005_decision_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bots") as batch_op:
        batch_op.add_column(sa.Column("min_stop_spread_ratio", sa.Float(), nullable=False, server_default="3"))
        batch_op.add_column(sa.Column("min_expected_r", sa.Float(), nullable=False, server_default="0"))
    with op.batch_alter_table("signals") as batch_op:
        batch_op.add_column(sa.Column("p_win", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("expected_r_net", sa.Float(), nullable=True))
    with op.batch_alter_table("orders") as batch_op:
        batch_op.add_column(sa.Column("invalidation", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch_op:
        batch_op.drop_column("invalidation")
    with op.batch_alter_table("signals") as batch_op:
        batch_op.drop_column("expected_r_net")
        batch_op.drop_column("p_win")
    with op.batch_alter_table("bots") as batch_op:
        batch_op.drop_column("min_expected_r")
        batch_op.drop_column("min_stop_spread_ratio")
