DROP TABLE oauth_nonces;
