package tidbschema

import (
	"encoding/json"
	"fmt"
)

// Database is one database of the schema.
type Database struct {
	ID   int64
	Name string // as created (TiDB's Name.O)
}

// Table is one table, view or sequence of a database.
type Table struct {
	ID   int64
	DBID int64
	Name string // as created (TiDB's Name.O)
	// Partitioned is set when the table's partitioning is enabled; only then
	// do its rows live under the partitions' ids (TiDB's GetPartitionInfo).
	Partitioned bool
	// Partitions are the partition definitions, in definition order.
	Partitions []Partition
	// AddingPartitions and DroppingPartitions are partitions in the middle
	// of an ADD/REORGANIZE or DROP/TRUNCATE PARTITION job: they can hold
	// rows while the job runs.
	AddingPartitions   []Partition
	DroppingPartitions []Partition
	IsView             bool
	IsSequence         bool
}

// Partition is one partition of a partitioned table: a physical table.
type Partition struct {
	ID   int64
	Name string
}

// PhysicalIDs are the ids whose "t{id}" prefixes hold the table's rows:
// the partitions' ids for a partitioned table (definitions only, as BR's
// buildObserveTableRange), the table's id otherwise.
func (t *Table) PhysicalIDs() []int64 {
	if !t.Partitioned {
		return []int64{t.ID}
	}
	ids := make([]int64, 0, len(t.Partitions))
	for _, p := range t.Partitions {
		ids = append(ids, p.ID)
	}
	return ids
}

// AllIDs are every id under which TiDB can write keys of the table: its
// own id (a partitioned table's global indexes live there) and, when
// partitioned, every partition's, including those being added or dropped.
func (t *Table) AllIDs() []int64 {
	ids := []int64{t.ID}
	if !t.Partitioned {
		return ids
	}
	for _, set := range [][]Partition{t.Partitions, t.AddingPartitions, t.DroppingPartitions} {
		for _, p := range set {
			ids = append(ids, p.ID)
		}
	}
	return ids
}

// The JSON below is the part of TiDB's model.DBInfo and model.TableInfo
// this package reads; unknown fields are ignored, as TiDB's own decoder
// does.

type ciStr struct {
	O string `json:"O"`
	L string `json:"L"`
}

type dbInfoJSON struct {
	ID   int64 `json:"id"`
	Name ciStr `json:"db_name"`
}

type partitionDefJSON struct {
	ID   int64 `json:"id"`
	Name ciStr `json:"name"`
}

type partitionInfoJSON struct {
	Enable              bool               `json:"enable"`
	Definitions         []partitionDefJSON `json:"definitions"`
	AddingDefinitions   []partitionDefJSON `json:"adding_definitions"`
	DroppingDefinitions []partitionDefJSON `json:"dropping_definitions"`
}

type tableInfoJSON struct {
	ID        int64              `json:"id"`
	Name      ciStr              `json:"name"`
	Partition *partitionInfoJSON `json:"partition"`
	View      json.RawMessage    `json:"view"`
	Sequence  json.RawMessage    `json:"sequence"`
}

func decodeDatabase(value []byte) (Database, error) {
	var d dbInfoJSON
	if err := json.Unmarshal(value, &d); err != nil {
		return Database{}, fmt.Errorf("decode DBInfo: %w", err)
	}
	return Database{ID: d.ID, Name: d.Name.O}, nil
}

func decodeTable(dbID int64, value []byte) (Table, error) {
	var ti tableInfoJSON
	if err := json.Unmarshal(value, &ti); err != nil {
		return Table{}, fmt.Errorf("decode TableInfo: %w", err)
	}
	t := Table{
		ID: ti.ID, DBID: dbID, Name: ti.Name.O,
		IsView:     isSet(ti.View),
		IsSequence: isSet(ti.Sequence),
	}
	if p := ti.Partition; p != nil && p.Enable {
		t.Partitioned = true
		t.Partitions = partitions(p.Definitions)
		t.AddingPartitions = partitions(p.AddingDefinitions)
		t.DroppingPartitions = partitions(p.DroppingDefinitions)
	}
	return t, nil
}

func partitions(defs []partitionDefJSON) []Partition {
	if len(defs) == 0 {
		return nil
	}
	out := make([]Partition, 0, len(defs))
	for _, d := range defs {
		out = append(out, Partition{ID: d.ID, Name: d.Name.O})
	}
	return out
}

// isSet tells a JSON member that holds an object from one that is absent
// or null (TiDB writes "view":null for tables).
func isSet(raw json.RawMessage) bool {
	return len(raw) > 0 && string(raw) != "null"
}
