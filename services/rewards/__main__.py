"""`python -m services.rewards`: serve the rewards API and its Kafka subscribers."""

from services.rewards.bootstrap import build_app
from services.rewards.settings import RewardsSettings
from shared.serve import serve

if __name__ == "__main__":
    serve(RewardsSettings(), build_app)
