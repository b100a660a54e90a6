"""predict(): probabilities and labels of every row, in batch order, model left in eval mode."""
from __future__ import annotations

import torch

from recpipe.models import dlrm
from recpipe.models.predict import predict
from tests.train.synthetic import NUM_DENSE, TABLE_SIZES, make_batches


def test_predict_matches_per_batch_sigmoid_and_keeps_order():
    torch.manual_seed(0)
    model = dlrm(TABLE_SIZES, num_dense=NUM_DENSE, embedding_dim=4, bottom=(8,), top=(8,))
    batches = make_batches(50, batch_size=16, seed=2)  # 16 + 16 + 16 + 2 rows
    probs, labels = predict(model, batches, device="cpu")
    assert not model.training
    with torch.no_grad():
        want = torch.cat([torch.sigmoid(model(b)) for b in batches])
    torch.testing.assert_close(probs, want, rtol=0, atol=0)
    assert torch.equal(labels, torch.cat([b.labels for b in batches])) and probs.shape == (50,)
    empty_p, empty_y = predict(model, [])
    assert empty_p.numel() == 0 and empty_y.numel() == 0
