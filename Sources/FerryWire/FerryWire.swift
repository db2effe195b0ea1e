// Placeholder; the wire codec lands here.
