-- Which review rule judged a prediction: 'scene' for a photo cut out of a
-- floor, a bed or a hanger (the model's [review.scene] pair), 'studio' for
-- every other photo. Earlier predictions were all judged by the one rule
-- there was, the studio rule.
ALTER TABLE predictions
    ADD COLUMN review_rule TEXT NOT NULL DEFAULT 'studio'
    CHECK (review_rule IN ('studio', 'scene'));
