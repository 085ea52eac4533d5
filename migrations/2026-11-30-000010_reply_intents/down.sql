DROP TABLE reply_intents;
