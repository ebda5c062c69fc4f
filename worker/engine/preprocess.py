"""Feature preprocessing for uploaded tabular data sets, as scikit-learn transformers.

`prepare_folds` fits a fresh transformer on each fold's training rows only (no leakage): pass
`partial(tabular_preprocessor, numeric, categorical, missing)` as a Dataset's `preprocess`.
DataFrames are handled only through scikit-learn and duck typing; pandas is never imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler


def _as_object(X: Any) -> np.ndarray:
    """Columns as an object array with float NaN for missing values.

    pandas' nullable string dtype marks missing values with pd.NA, whose truth value is
    ambiguous and which SimpleImputer / MissingIndicator (missing_values=np.nan) do not see as
    missing; object and pandas 3 `str` columns already use NaN and pass through unchanged.
    """
    if hasattr(X, "to_numpy"):  # a DataFrame: any dtype, any missing marker
        return np.asarray(X.to_numpy(dtype=object, na_value=np.nan, copy=True))
    return np.asarray(X, dtype=object)


def _as_float(X: Any) -> np.ndarray:
    # MissingIndicator yields bool; a block of only indicators would make the output bool
    return np.asarray(X, dtype=np.float64)


def tabular_preprocessor(
    numeric: Sequence[str], categorical: Sequence[str], missing: Sequence[str]
) -> ColumnTransformer:
    """A fresh, unfitted transformer of a DataFrame's feature columns to a float64 matrix.

    Output columns, in order: numeric columns median-imputed then standardised; categorical
    columns imputed with their most frequent value then one-hot encoded (a category unseen when
    fitting encodes as all zeros); one 0/1 indicator per `missing` column. `missing` names the
    columns with any missing value in the whole data set: that is schema, not statistics, and it
    gives every fold the same indicator columns. keep_empty_features keeps a column that is all
    missing in some fold's training part (imputed with 0), so widths only ever differ by the
    one-hot categories a fold's training part has seen.
    """
    blocks: list[tuple[str, Any, list[str]]] = []
    if numeric:
        num = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("scale", StandardScaler()),
            ]
        )
        blocks.append(("numeric", num, list(numeric)))
    if categorical:
        cat = Pipeline(
            [
                ("object", FunctionTransformer(_as_object, feature_names_out="one-to-one")),
                ("impute", SimpleImputer(strategy="most_frequent", keep_empty_features=True)),
                ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
            ]
        )
        blocks.append(("categorical", cat, list(categorical)))
    if missing:
        flags = Pipeline(
            [
                ("object", FunctionTransformer(_as_object, feature_names_out="one-to-one")),
                ("indicate", MissingIndicator(features="all")),
                ("float", FunctionTransformer(_as_float, feature_names_out="one-to-one")),
            ]
        )
        blocks.append(("missing", flags, list(missing)))
    if not blocks:
        raise ValueError("tabular_preprocessor needs at least one column")
    return ColumnTransformer(blocks, remainder="drop", sparse_threshold=0.0)
