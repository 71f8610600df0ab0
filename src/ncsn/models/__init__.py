"""Model zoo: score networks for 2-D data and images, energy networks."""
