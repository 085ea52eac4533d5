DROP TABLE messages;
DROP TABLE conversations;
DROP TABLE channels;
DROP TABLE slack_workspaces;
