-- The hold a booking was confirmed from. After confirmation the hold lingers in Valkey for a
-- short while, so the rush of callers that follows a hot slot's booking is still refused there,
-- without a database read each; cancelling or rescheduling the booking releases it at once,
-- which needs the hold's name.
ALTER TABLE bookings ADD COLUMN hold_nonce text CHECK (length(hold_nonce) <= 64);
