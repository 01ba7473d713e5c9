"""Business counters of the referral service (Prometheus)."""

from prometheus_client import Counter

BINDINGS = Counter("pinwheel_referral_bindings_total", "binding attempts by channel and outcome",
                   ["channel", "outcome"])
LEDGER_STEPS = Counter("pinwheel_referral_ledger_steps_total", "qualifications and disqualifications", ["kind"])
MILESTONES = Counter("pinwheel_referral_milestones_total", "milestones announced", ["milestone"])

# The names the Grafana dashboard reads (deploy/grafana/METRICS.md), counted once per decision.
QUALIFICATIONS = Counter("pinwheel_referral_qualifications_total", "referrals qualified")
DISQUALIFICATIONS = Counter("pinwheel_referral_disqualifications_total", "referrals disqualified")
FLAGS = Counter("pinwheel_referral_flags_total", "bindings flagged for review")
