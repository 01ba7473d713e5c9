"""`python -m services.groupbuy`: serve the groupbuy API and its Kafka subscribers."""

from services.groupbuy.bootstrap import build_app
from services.groupbuy.settings import GroupbuySettings
from shared.serve import serve

if __name__ == "__main__":
    serve(GroupbuySettings(), build_app)
