"""`python -m services.referral`: serve the referral API and its Kafka subscribers."""

from services.referral.bootstrap import build_app
from services.referral.settings import ReferralSettings
from shared.serve import serve

if __name__ == "__main__":
    serve(ReferralSettings(), build_app)
