"""Selection maths: quality scores, routing distances, strata, farthest point sampling."""
