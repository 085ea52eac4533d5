DROP TABLE turn_progress;
