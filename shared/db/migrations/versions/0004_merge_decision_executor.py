"""Join the decision API (0002) and executor (0003) branches, written side by side.

Revision ID: 0004_merge
Revises: 0002_decision_api, 0003_executor
"""

revision = "0004_merge"
down_revision = ("0002_decision_api", "0003_executor")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
