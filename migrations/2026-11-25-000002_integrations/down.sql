DROP TABLE github_events;
DROP TABLE github_repositories;
DROP TABLE integration_credentials;
DROP TABLE integrations;
