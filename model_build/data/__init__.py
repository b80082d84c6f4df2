"""The data room: labelled data sets (CLINC150's layout, CSV, JSON Lines) into index-ordered splits
(`dataset`), a background class from negatives (`background`), texts without labels (`unlabeled`), the
requests the cloud refused, listed from the edge's feedback for review (`off_topic`), and the checked download of
public data (`fetch`). Imports nothing of the build but its errors."""
