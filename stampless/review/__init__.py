"""The manual tier: the review queue (:mod:`.store`), reviewer accounts and the web console."""

from stampless.review.store import ReviewConflict, ReviewItem, ReviewNote, ReviewStore

__all__ = ["ReviewConflict", "ReviewItem", "ReviewNote", "ReviewStore"]
