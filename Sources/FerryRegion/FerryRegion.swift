// Placeholder; the region module lands here.
