"""The calibrate room: temperatures and routing thresholds, fit on the validation split re-weighted to the
traffic mix (`fit`, which writes what the manifest carries). Its pieces, plain numpy: temperature scaling and
calibration metrics (`calibration`), escalation curves (`curves`), one-threshold choices (`thresholds`), the
three-way rule's search (`deferral`), the rule applied to a split (`routing`) and the validation shift table
(`shift_table`). The scores and the rule itself are modelpack's, the runtimes' own."""
