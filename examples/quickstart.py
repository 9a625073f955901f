"""Quick demo: a uGMM-NN trained on the iris data set.

Run with ``python examples/quickstart.py`` (a few seconds on a laptop CPU).
"""

import torch
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from sklearn_ugmm.nn import UGMMNet

X, y = load_iris(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, stratify=y, random_state=0)
scaler = StandardScaler().fit(X_train)
X_train = torch.as_tensor(scaler.transform(X_train), dtype=torch.float32)
X_test = torch.as_tensor(scaler.transform(X_test), dtype=torch.float32)
y_train = torch.as_tensor(y_train)

gen = torch.Generator().manual_seed(0)
net = UGMMNet(4, (16,), 3)
net.init_from_data(X_train, generator=gen)
opt = torch.optim.Adam(net.parameters(), lr=0.02)
for epoch in range(200):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(X_train), y_train)
    loss.backward()
    opt.step()
net.eval()
with torch.no_grad():
    accuracy = (net(X_test).argmax(1).numpy() == y_test).mean()
print(f"final training loss {loss.item():.3f}, test accuracy {accuracy:.3f}")
