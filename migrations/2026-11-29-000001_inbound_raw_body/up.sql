-- The body of an inbound event exactly as received, kept only when `payload` could not hold it
-- as is: jsonb (and text) cannot hold U+0000, so a signed delivery with "\u0000" in a string is
-- stored with that character replaced in `payload` (what the handlers see) and verbatim here.
ALTER TABLE inbound_events ADD COLUMN raw_body TEXT;
