"""MRI preprocessing: N4 bias correction, registration, skull stripping, intensity normalisation."""
