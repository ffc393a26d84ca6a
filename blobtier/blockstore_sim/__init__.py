"""The simulated Tectonic-like block layer and the origin adapter."""
