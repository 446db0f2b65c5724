"""The shiva-bids brainlife.io App: config.json in, brainlife outputs and product.json out."""
