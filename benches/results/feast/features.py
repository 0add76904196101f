from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float32

driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)

driver_stats_source = FileSource(
    name="driver_stats_source",
    path="data/driver_stats.parquet",
    timestamp_field="event_timestamp",
)

driver_hourly_stats = FeatureView(
    name="driver_hourly_stats",
    entities=[driver],
    ttl=timedelta(days=1),
    schema=[Field(name="f0", dtype=Float32), Field(name="f1", dtype=Float32), Field(name="f2", dtype=Float32), Field(name="f3", dtype=Float32), Field(name="f4", dtype=Float32), Field(name="f5", dtype=Float32), Field(name="f6", dtype=Float32), Field(name="f7", dtype=Float32), Field(name="f8", dtype=Float32), Field(name="f9", dtype=Float32), Field(name="f10", dtype=Float32), Field(name="f11", dtype=Float32), Field(name="f12", dtype=Float32), Field(name="f13", dtype=Float32), Field(name="f14", dtype=Float32), Field(name="f15", dtype=Float32)],
    online=True,
    source=driver_stats_source,
)
