//! The main job: an end-to-end experiment on the bundled data and models.
