//! Root rotation state machine (stable → trust-new → sign-new → retire-old).
//! Pure. Arrives with the rotation issue; the bundle's append-at-end /
//! remove-from-front operations are the seam it builds on.
