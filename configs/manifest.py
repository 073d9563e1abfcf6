"""Any corpus listed in a manifest (CSV, TSV or JSONL; see msjax.data.manifest).

    bin/train --dataset=manifest --data_dir=path/to/list.csv
    bin/train --dataset=manifest --data_dir=list.csv --config.protocol=split
    bin/train --dataset=manifest --data_dir=iemocap.csv --config.protocol=session \
        --config.label_map=exc:hap,fru:,sur:,fea:,dis:,oth:,xxx: \
        --config.labels=ang,hap,sad,neu

Protocols: loso (needs a speaker column), group (leave one `session` value out),
stratified (k-fold, --folds), split (the manifest's own train/val/test column).
"""

import ml_collections

from msjax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset = "manifest"
    config.protocol = "loso"
    # Class order, comma-separated ("ang,hap,sad,neu"); empty: the data's labels, sorted.
    config.labels = ""
    # raw:label pairs, comma-separated, each applied once; "raw:" drops a class ("exc:hap,oth:").
    # Labels here and in the data ignore case and surrounding spaces.
    config.label_map = ""
    return config
